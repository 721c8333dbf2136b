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

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::Message;
use snapfeed_runtime::avro::AvroError;
use snapfeed_runtime::headers;
use snapfeed_runtime::kafka::{
    committed_or_beginning, GuaranteedWriter, OutgoingRecord, ProcessingGuarantee, TopicReader,
    WriteError,
};
use snapfeed_runtime::partition::partition_for_key;
use snapfeed_runtime::records::AvroRecord;
use snapfeed_runtime::replay::{ensure_stopped, ReplayError};
use snapfeed_runtime::service::HasCommonSections;

use crate::ChangeDetectorConfig;

mod plan;

use plan::{plan, Found, Write};

/// The sink's service name: its consumer group is `<pipeline>.api-sink`.
const SINK: &str = "api-sink";
/// What `state` holds: the kinds a repartition may copy.
const STATE_KINDS: [&str; 4] = [
    snapfeed_runtime::records::DetectorState::SCHEMA,
    snapfeed_runtime::records::StreamProgress::SCHEMA,
    snapfeed_runtime::records::StaleSnapshot::SCHEMA,
    snapfeed_runtime::records::StateLayout::SCHEMA,
];

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
    /// The schema registry client could not be set up.
    #[error("cannot set up the schema registry client: {0}")]
    Registry(#[source] Box<snapfeed_runtime::service::RuntimeError>),
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
    let schemas = common
        .load_schemas_for_command()
        .map_err(|error| match error {
            snapfeed_runtime::service::RuntimeError::Schemas(error) => schemas_failed(error),
            other => RepartitionError::Registry(Box::new(other)),
        })?;
    // With registry framing, the copies are framed like every state entry.
    snapfeed_runtime::avro::registry::register_kinds(&schemas, &topics, &STATE_KINDS)
        .map_err(|error| RepartitionError::Registry(Box::new(error.into())))?;
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
    let from = committed_or_beginning(offsets, topic, partitions, timeout)
        .map_err(failed("committed offsets"))?;
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
