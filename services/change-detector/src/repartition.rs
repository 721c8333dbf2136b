//! `change-detector repartition`: re-keys the `state` topic into the partition count the topics
//! have now, so that after `snapshots`, `state` and `changes` got more partitions no key is
//! re-created and no version repeats (README § Changing the partition count).
//!
//! Kafka adds partitions in place: old partitions keep their records, new ones start empty, and
//! from then on a key is written to `murmur2(key) % N` of the new count — for most keys another
//! partition than before. The detector refuses state written for another count
//! ([`detect::layout`](crate::detect::layout)); this command makes the state fit:
//!
//! 1. **Checks first, writes nothing if one fails.** The detector's group has no live member
//!    (the stage is stopped); `snapshots`, `state` and `changes` have the same count; no record
//!    of a key that moves is still undecided on `snapshots` past the detector's committed
//!    offsets, nor still undelivered on `changes` past api-sink's — it would be decided
//!    without its state, or a moved key's versions could be delivered out of order from two
//!    partitions. Records already written for the new count are fine.
//! 2. **Re-keys.** Every key's entry is written to its partition under the new count and
//!    tombstoned on the old one; the newest snapshot per stream (the ordering guard) is written
//!    to every partition; every partition gets a layout entry for the new count.
//! 3. **Atomic or repeatable.** In `exactly_once` all of it is one transaction. In
//!    `at_least_once` the copies, progress and layouts are acknowledged before the first
//!    tombstone, so a crash leaves at most a key on two partitions with the same entry — and
//!    running the command again finishes the job (a key on two partitions keeps the entry with
//!    the higher version). `--dry-run` prints the plan and writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use snapfeed_runtime::avro::{AvroError, MessageLocation, SchemaStore};
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::{
    GuaranteedWriter, OutgoingRecord, ProcessingGuarantee, TopicReader, WriteError,
};
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::{
    now_millis, AvroRecord, DetectorState, StateLayout, StreamProgress, STREAM_PROGRESS_KEY_PREFIX,
};
use snapfeed_runtime::replay::{ensure_stopped, ReplayError};
use snapfeed_runtime::service::HasCommonSections;

use crate::detect::layout::STATE_LAYOUT_KEY;
use crate::ChangeDetectorConfig;

/// The sink's service name: its consumer group is `<pipeline>.api-sink`.
const SINK: &str = "api-sink";

/// What the command is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepartitionOptions {
    /// Print the plan, write nothing.
    pub dry_run: bool,
}

/// Why the state was not re-keyed. Nothing was written, except for [`Write`](Self::Write).
#[derive(Debug, thiserror::Error)]
pub enum RepartitionError {
    /// The schemas did not load.
    #[error("cannot load the schemas: {0}")]
    Schemas(#[source] Box<AvroError>),
    /// The detector still runs.
    #[error("{0} (the state must not change under a running detector)")]
    Running(#[source] ReplayError),
    /// The three topics differ in partition count.
    #[error("snapshots ({snapshots}), state ({state}) and changes ({changes}) must have the same partition count before the state can be re-keyed: add partitions to the smaller ones first")]
    NotCopartitioned {
        /// Partitions of `snapshots`.
        snapshots: i32,
        /// Partitions of `state`.
        state: i32,
        /// Partitions of `changes`.
        changes: i32,
    },
    /// Records of keys that move are still undecided or undelivered.
    #[error("{topic} has {records} record(s) of keys that change partition past the committed offsets of group {group:?} (partitions {partitions:?}): {remedy}")]
    Unprocessed {
        /// The topic.
        topic: String,
        /// The group that has not processed them.
        group: String,
        /// How many.
        records: u64,
        /// Where.
        partitions: Vec<i32>,
        /// What to do.
        remedy: &'static str,
    },
    /// A state entry that has to be decoded (a control entry, or a key held on two
    /// partitions) is not readable: nothing was written.
    #[error("unreadable state entry: {0}")]
    Unreadable(#[source] Box<AvroError>),
    /// A Kafka call failed before anything was written.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// Writing failed.
    #[error("writing the re-keyed state failed ({0}); in exactly_once nothing of it is visible, in at_least_once part may be: run the command again before starting the detector")]
    Write(#[source] WriteError),
}

/// What remedy to name for undecided `snapshots` records.
const SNAPSHOTS_REMEDY: &str = "they were written for the old partition count and would be decided without their keys' state. Let the detector catch up before adding partitions (stop file-source first); if partitions were already added, skip them with `change-detector replay --to latest` (every snapshot is complete: the next one brings each record again) and run `repartition` again";

/// What remedy to name for undelivered `changes`.
const CHANGES_REMEDY: &str = "a moved key's next version would go out from another partition and could overtake them. Let api-sink catch up (it may keep running), then run `repartition` again";

fn schemas_failed(error: AvroError) -> RepartitionError {
    RepartitionError::Schemas(Box::new(error))
}

fn unreadable(error: AvroError) -> RepartitionError {
    RepartitionError::Unreadable(Box::new(error))
}

fn failed(context: &'static str) -> impl FnOnce(KafkaError) -> RepartitionError {
    move |source| RepartitionError::Kafka { context, source }
}

/// What the command did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepartitionReport {
    /// The `state` topic.
    pub topic: String,
    /// Its partition count now.
    pub partitions: i32,
    /// Counts recorded by the layout entries found (empty: state older than layout entries).
    pub previous: BTreeSet<i32>,
    /// Live keys.
    pub keys: u64,
    /// Keys written to their partition under the new count.
    pub moved: u64,
    /// Entries tombstoned on a partition that is no longer their key's.
    pub tombstones: u64,
    /// Streams whose newest snapshot was written to every partition.
    pub streams: u64,
    /// Layout entries written.
    pub layouts: u64,
    /// Nothing was written.
    pub dry_run: bool,
}

impl fmt::Display for RepartitionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous = if self.previous.is_empty() {
            "no layout entries (state written before they existed)".to_string()
        } else {
            let counts: Vec<String> = self.previous.iter().map(i32::to_string).collect();
            format!("written for {} partitions", counts.join(" and "))
        };
        let verb = if self.dry_run { "would be" } else { "were" };
        writeln!(
            f,
            "{}: {} partitions; the state found was {previous}.",
            self.topic, self.partitions
        )?;
        writeln!(f, "  {} keys; {} {verb} moved to their partition under {} partitions, {} old entries {verb} tombstoned.", self.keys, self.moved, self.partitions, self.tombstones)?;
        writeln!(
            f,
            "  the newest snapshot of {} stream(s) and {} layout entries {verb} written.",
            self.streams, self.layouts
        )?;
        if self.dry_run {
            writeln!(f, "Dry run: nothing was written.")
        } else {
            writeln!(
                f,
                "Next: start change-detector, then file-source (README § Changing the partition count)."
            )
        }
    }
}

/// A live entry of a key, and where it is.
#[derive(Debug)]
struct Held<'a> {
    location: MessageLocation,
    value: &'a [u8],
}

/// One write of the plan.
#[derive(Debug)]
struct Write {
    partition: i32,
    key: String,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
}

/// Re-keys `state` into the topics' partition count (blocking: every call is a librdkafka
/// call; run it from a command, not from an async worker).
pub fn repartition(
    config: &ChangeDetectorConfig,
    options: RepartitionOptions,
) -> Result<RepartitionReport, RepartitionError> {
    let common = config.common();
    let topics = common.topic_names();
    let guarantee = common.pipeline.processing_guarantee;
    let timeout = common.kafka.request_timeout();
    let group = common.pipeline.group_id(crate::SERVICE);
    let schemas = SchemaStore::load_dir(&common.pipeline.schemas_dir).map_err(schemas_failed)?;
    let reader = TopicReader::new(common.kafka, crate::SERVICE, guarantee)
        .map_err(failed("create a reader"))?;

    let detector_offsets: BaseConsumer = common
        .kafka
        .consumer_config(crate::SERVICE, &group, ProcessingGuarantee::AtLeastOnce)
        .create()
        .map_err(failed("create a consumer"))?;
    ensure_stopped(&detector_offsets, &group, timeout).map_err(RepartitionError::Running)?;

    let count = |topic: &str| reader.partitions(topic).map_err(failed("metadata"));
    let (snapshots, state, changes) = (
        count(&topics.snapshots)?,
        count(&topics.state)?,
        count(&topics.changes)?,
    );
    if snapshots != state || state != changes || state == 0 {
        return Err(RepartitionError::NotCopartitioned {
            snapshots,
            state,
            changes,
        });
    }
    let partitions = state;

    check_processed(
        &reader,
        &detector_offsets,
        &topics.snapshots,
        &group,
        partitions,
        SNAPSHOTS_REMEDY,
        timeout,
    )?;
    let sink_group = common.pipeline.group_id(SINK);
    let sink_offsets: BaseConsumer = common
        .kafka
        .consumer_config(
            crate::SERVICE,
            &sink_group,
            ProcessingGuarantee::AtLeastOnce,
        )
        .create()
        .map_err(failed("create a consumer"))?;
    check_processed(
        &reader,
        &sink_offsets,
        &topics.changes,
        &sink_group,
        partitions,
        CHANGES_REMEDY,
        timeout,
    )?;

    let found = read_state(&reader, &topics.state, partitions)?;
    let (plan, mut report) = plan(&found, &schemas, &topics.state, partitions)?;
    report.topic = topics.state.clone();
    report.dry_run = options.dry_run;
    if !options.dry_run {
        write(config, &topics.state, guarantee, &plan).map_err(RepartitionError::Write)?;
    }
    Ok(report)
}

/// Fails when records of keys that belong to another partition under `partitions` lie past
/// `group`'s committed offsets on `topic` (a group that never committed: from the start).
fn check_processed(
    reader: &TopicReader,
    offsets: &BaseConsumer,
    topic: &str,
    group: &str,
    partitions: i32,
    remedy: &'static str,
    timeout: std::time::Duration,
) -> Result<(), RepartitionError> {
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let committed = offsets
        .committed_offsets(query, timeout)
        .map_err(failed("committed offsets"))?;
    let from: Vec<(i32, Offset)> = (0..partitions)
        .map(|partition| {
            let offset = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            (partition, offset)
        })
        .collect();
    let mut moving: BTreeMap<i32, u64> = BTreeMap::new();
    reader
        .read_from(topic, &from, |message| {
            let control = message
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == headers::CONTROL));
            let Some(key) = message.key().filter(|_| !control) else {
                return;
            };
            if partition_for_key(key, partitions) != message.partition() {
                *moving.entry(message.partition()).or_default() += 1;
            }
        })
        .map_err(failed("read past the committed offsets"))?;
    if moving.is_empty() {
        return Ok(());
    }
    Err(RepartitionError::Unprocessed {
        topic: topic.to_string(),
        group: group.to_string(),
        records: moving.values().sum(),
        partitions: moving.keys().copied().collect(),
        remedy,
    })
}

/// `state` as it stands: per partition, the offset and last value of each key (`None`:
/// tombstoned).
type Found = BTreeMap<i32, HashMap<String, (i64, Option<Vec<u8>>)>>;

fn read_state(
    reader: &TopicReader,
    topic: &str,
    partitions: i32,
) -> Result<Found, RepartitionError> {
    let mut found: Found = (0..partitions).map(|p| (p, HashMap::new())).collect();
    let all: Vec<i32> = (0..partitions).collect();
    reader
        .read_to_end(topic, &all, |message| {
            let Some(Ok(key)) = message.key().map(std::str::from_utf8) else {
                return;
            };
            if let Some(entries) = found.get_mut(&message.partition()) {
                entries.insert(
                    key.to_string(),
                    (message.offset(), message.payload().map(<[u8]>::to_vec)),
                );
            }
        })
        .map_err(failed("read the state"))?;
    Ok(found)
}

/// The writes that make `found` fit `partitions`, and what they amount to.
fn plan(
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
    // stream → (newest progress time, its entry).
    let mut newest: BTreeMap<String, (i64, &[u8])> = BTreeMap::new();
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
                let slot = newest
                    .entry(stream.to_string())
                    .or_insert((progress.snapshot_time, value));
                if progress.snapshot_time > slot.0 {
                    *slot = (progress.snapshot_time, value);
                }
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
    for (stream, (_, entry)) in &newest {
        report.streams += 1;
        let key = format!("{STREAM_PROGRESS_KEY_PREFIX}{stream}");
        for partition in 0..partitions {
            let current = found
                .get(&partition)
                .and_then(|entries| entries.get(&key))
                .and_then(|(_, value)| value.as_deref());
            if current != Some(*entry) {
                copies.push(Write {
                    partition,
                    key: key.clone(),
                    value: Some(entry.to_vec()),
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

/// Writes the plan: in `exactly_once` one transaction; in `at_least_once` everything but the
/// tombstones acknowledged first, so a crash never leaves a key without an entry.
fn write(
    config: &ChangeDetectorConfig,
    topic: &str,
    guarantee: ProcessingGuarantee,
    plan: &[Write],
) -> Result<(), WriteError> {
    let common = config.common();
    let writer = GuaranteedWriter::connect(
        common.kafka,
        crate::SERVICE,
        guarantee,
        &format!("{}.{}.repartition", common.pipeline.name, crate::SERVICE),
    )?;
    let mut tombstones_started = false;
    for write in plan {
        if write.value.is_none() && !tombstones_started {
            tombstones_started = true;
            if !guarantee.is_transactional() {
                writer.commit_sent()?;
            }
        }
        let mut record = OutgoingRecord::new(topic, write.key.as_bytes(), &[]);
        record.payload = write.value.as_deref();
        writer.send(record.partition(write.partition))?;
    }
    writer.commit_sent()?;
    writer.close(std::time::Duration::from_secs(10))
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
        };
        schemas
            .current(DetectorState::SCHEMA)
            .unwrap()
            .encode(&state)
            .unwrap()
    }

    fn progress(schemas: &SchemaStore, time: i64) -> Vec<u8> {
        let progress = StreamProgress {
            stream: "default".into(),
            snapshot_id: format!("s{time}"),
            snapshot_time: time,
            file_name: "f.csv".into(),
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
        put(0, &stream_key, progress(&schemas, 100));
        put(1, &stream_key, progress(&schemas, 200));

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
                Some(Some(progress(&schemas, 200)))
            );
        }
        // Every tombstone comes after every copy: a crash in between leaves no key without
        // an entry.
        let first_tombstone = writes.iter().position(|w| w.value.is_none()).unwrap();
        assert!(writes[first_tombstone..].iter().all(|w| w.value.is_none()));
    }
}
