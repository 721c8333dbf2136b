//! `reconcile --file NAME | --snapshot ID`: where every row of one snapshot went, read from the
//! pipeline's own topics — the product's end-to-end check, as an on-call operator asks it.
//!
//! - `files` (the ingestion ledger): the file's status, rows read, sent and rejected;
//! - `rejects`: rejected rows of the snapshot by reason;
//! - `snapshots` past change-detector's committed offsets: records not decided yet;
//! - `state`: the partitions where change-detector passed the snapshot over as stale (older
//!   than the newest applied for its stream — a late file): its rows changed nothing there;
//! - `changes`: the snapshot's CREATE / UPDATE / DELETE events (unchanged = sent − decided
//!   into a change, once nothing is left undecided);
//! - `deliveries` and `dead-letters`: each change delivered (a 2xx receipt for its partition
//!   and offset), dead-lettered (and not delivered since, by a redrive), or still pending.
//!
//! **Reconciled** (exit 0) only when the file is completed, nothing is left undecided, and
//! every change of the snapshot is delivered; a dead-lettered or pending change makes it exit
//! 1, naming the change (record key and version — never record contents).
//!
//! Cost: one pass over `changes`, `deliveries` and `dead-letters` (their retention), the tail
//! of `snapshots` past the detector's offsets, and the compacted `files` and `state` (keys
//! only, but for the few stale-snapshot entries). Blocking.
//!
//! Every service binary has the subcommand (`<service> --config … reconcile`), not a fourth
//! binary: each already ships with a config naming the pipeline's brokers and topics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use rdkafka::error::KafkaError;
use rdkafka::Message;

use crate::avro::{MessageLocation, SchemaStore};
use crate::kafka::{group_positions, KafkaConfig, ProcessingGuarantee, TopicReader};
use crate::records::{
    AvroRecord, ChangeEvent, ChangeOp, DeadLetter, DeliveryReceipt, FileLedgerEntry, FileStatus,
    RejectedRow,
};
use crate::topics::TopicNames;

mod passed_over;
mod report;

/// Which snapshot(s) to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileTarget {
    /// Every snapshot ingested from a file of this name.
    File(String),
    /// One snapshot by id.
    Snapshot(String),
}

/// Why reconciling failed (not: why it did not add up — that is a [`Reconciliation`]).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// No ledger entry names the file or snapshot.
    #[error("no file in the ledger ({topic}) matches {target} (a file skipped as a duplicate of one already ingested is in the ledger under the first one's name)")]
    NotFound {
        /// The ledger topic.
        topic: String,
        /// What was asked for.
        target: String,
    },
    /// A Kafka call failed.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: &'static str,
        /// The client error.
        source: KafkaError,
    },
}

fn failed(context: &'static str) -> impl FnOnce(KafkaError) -> ReconcileError {
    move |source| ReconcileError::Kafka { context, source }
}

/// One change of the snapshot and where it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRef {
    /// Record key.
    pub key: String,
    /// Version.
    pub version: i64,
    /// Where it is on `changes`.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was dead-lettered (empty when pending).
    pub reason: String,
}

/// A partition where change-detector passed the snapshot over: older than the newest
/// snapshot of its stream already applied there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOver {
    /// Partition of `snapshots`.
    pub partition: i32,
    /// The snapshot's rows on it (its end marker's count).
    pub rows: i64,
    /// Of those, the rows passed over (fewer: part of it was applied before the newer snapshot
    /// began there, or the detector restarted in the middle of it).
    pub passed_over: i64,
    /// When the snapshot was taken (ms).
    pub snapshot_time: i64,
    /// The newer snapshot applied there.
    pub newest_snapshot_id: String,
    /// When that one was taken (ms).
    pub newest_snapshot_time: i64,
}

/// Where one snapshot's rows went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotReconciliation {
    /// Snapshot id.
    pub snapshot_id: String,
    /// File name.
    pub file_name: String,
    /// Stream.
    pub stream: String,
    /// The ledger's status of the file.
    pub status: Option<FileStatus>,
    /// Data rows in the file (once known).
    pub rows_total: Option<i64>,
    /// Rows sent to `snapshots`.
    pub rows_sent: i64,
    /// Rows rejected (the ledger's count).
    pub rows_rejected: i64,
    /// Rejected rows on `rejects`, by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// CREATE events.
    pub created: u64,
    /// UPDATE events.
    pub updated: u64,
    /// DELETE events.
    pub deleted: u64,
    /// Changes delivered.
    pub delivered: u64,
    /// Changes dead-lettered and not delivered since.
    pub dead_lettered: Vec<ChangeRef>,
    /// Changes neither delivered nor dead-lettered yet.
    pub pending: Vec<ChangeRef>,
    /// Partitions where it was passed over as stale (empty: applied everywhere).
    pub passed_over: Vec<PassedOver>,
}

impl SnapshotReconciliation {
    /// Rows that changed nothing though decided: sent − passed over − created − updated (a
    /// DELETE is no row), when known.
    pub fn unchanged(&self) -> i64 {
        (self.rows_sent - self.rows_passed_over() - (self.created + self.updated) as i64).max(0)
    }

    /// Rows passed over as stale (on the partitions where it was).
    pub fn rows_passed_over(&self) -> i64 {
        self.passed_over.iter().map(|p| p.passed_over).sum()
    }
}

/// What `reconcile` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Each matching snapshot.
    pub snapshots: Vec<SnapshotReconciliation>,
    /// Records on `snapshots` past change-detector's committed offsets (any snapshot's);
    /// `None` when not counted ([`ReconcileOptions::count_undecided`]).
    pub undecided: Option<u64>,
}

/// How to reconcile.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions {
    /// Count records past change-detector's committed offsets. Always on in the command; off
    /// only where the broker does not keep a transaction's offsets (librdkafka's mock cluster
    /// acknowledges `TxnOffsetCommit` without storing it; Tansu drops the offsets of a
    /// transaction that produced no record) — there the count would be everything.
    pub count_undecided: bool,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            count_undecided: true,
        }
    }
}

impl Reconciliation {
    /// True when every file is completed, nothing is undecided, and every change delivered.
    pub fn is_reconciled(&self) -> bool {
        self.undecided.unwrap_or(0) == 0
            && self.snapshots.iter().all(|s| {
                s.status == Some(FileStatus::Completed)
                    && s.dead_lettered.is_empty()
                    && s.pending.is_empty()
            })
    }
}

/// Reconciles `target` on the pipeline `pipeline` (its group ids derive from it). Blocking.
pub fn reconcile(
    kafka: &KafkaConfig,
    pipeline: &str,
    topics: &TopicNames,
    schemas: &SchemaStore,
    guarantee: ProcessingGuarantee,
    target: &ReconcileTarget,
    options: ReconcileOptions,
) -> Result<Reconciliation, ReconcileError> {
    let reader =
        TopicReader::new(kafka, "reconcile", guarantee).map_err(failed("create a reader"))?;
    let decode_failed = |what: &str, location: &MessageLocation, error: &dyn fmt::Display| {
        tracing::warn!(message = "Skipping a record that does not decode.", what, %location, %error);
    };
    let location = |m: &rdkafka::message::BorrowedMessage<'_>| MessageLocation::of(m);

    // The ledger: the last entry per file hash.
    let mut files: HashMap<String, FileLedgerEntry> = HashMap::new();
    reader
        .read_all(&topics.files, |m| {
            let (Some(key), Some(payload)) = (m.key(), m.payload()) else {
                return;
            };
            match schemas.decode::<FileLedgerEntry>(payload, FileLedgerEntry::SCHEMA, &location(m))
            {
                Ok(entry) => {
                    files.insert(String::from_utf8_lossy(key).into_owned(), entry);
                }
                Err(error) => decode_failed("ledger entry", &location(m), &error),
            }
        })
        .map_err(failed("read the ledger"))?;
    let mut selected: Vec<SnapshotReconciliation> = files
        .values()
        .filter(|entry| match target {
            ReconcileTarget::File(name) => entry.file_name == *name,
            ReconcileTarget::Snapshot(id) => entry.snapshot_id == *id,
        })
        .map(|entry| SnapshotReconciliation {
            snapshot_id: entry.snapshot_id.clone(),
            file_name: entry.file_name.clone(),
            stream: entry.stream.clone(),
            status: Some(entry.status),
            rows_total: entry.rows_total,
            rows_sent: entry.rows_sent,
            rows_rejected: entry.rows_rejected,
            ..SnapshotReconciliation::default()
        })
        .collect();
    if selected.is_empty() {
        return Err(ReconcileError::NotFound {
            topic: topics.files.clone(),
            target: match target {
                ReconcileTarget::File(name) => format!("file {name:?}"),
                ReconcileTarget::Snapshot(id) => format!("snapshot {id:?}"),
            },
        });
    }
    selected.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    let index: HashMap<String, usize> = selected
        .iter()
        .enumerate()
        .map(|(i, s)| (s.snapshot_id.clone(), i))
        .collect();

    reader
        .read_all(&topics.rejects, |m| {
            let Some(payload) = m.payload() else { return };
            match schemas.decode::<RejectedRow>(payload, RejectedRow::SCHEMA, &location(m)) {
                Ok(row) => {
                    if let Some(&i) = index.get(&row.snapshot_id) {
                        *selected[i]
                            .rejected_by_reason
                            .entry(row.reason)
                            .or_default() += 1;
                    }
                }
                Err(error) => decode_failed("rejected row", &location(m), &error),
            }
        })
        .map_err(failed("read the rejects"))?;

    // The snapshot's changes: each (key, version) once, with every place it is on `changes`
    // (an at_least_once detector's repeat, a redrive of its dead letter).
    let mut changes: BTreeMap<(usize, String, i64), Vec<(i32, i64)>> = BTreeMap::new();
    reader
        .read_all(&topics.changes, |m| {
            let Some(payload) = m.payload() else { return };
            match schemas.decode::<ChangeEvent>(payload, ChangeEvent::SCHEMA, &location(m)) {
                Ok(event) => {
                    let Some(&i) = index.get(&event.source.snapshot_id) else {
                        return;
                    };
                    let places = changes.entry((i, event.key, event.version)).or_default();
                    if places.is_empty() {
                        let s = &mut selected[i];
                        match event.op {
                            ChangeOp::Create => s.created += 1,
                            ChangeOp::Update => s.updated += 1,
                            ChangeOp::Delete => s.deleted += 1,
                        }
                    }
                    places.push((m.partition(), m.offset()));
                }
                Err(error) => decode_failed("change event", &location(m), &error),
            }
        })
        .map_err(failed("read the changes"))?;

    let mut delivered: BTreeSet<(i32, i64)> = BTreeSet::new();
    reader
        .read_all(&topics.deliveries, |m| {
            let Some(payload) = m.payload() else { return };
            match schemas.decode::<DeliveryReceipt>(payload, DeliveryReceipt::SCHEMA, &location(m))
            {
                Ok(receipt) if (200..300).contains(&receipt.status) => {
                    delivered.insert((receipt.source_partition, receipt.source_offset));
                }
                Ok(_) => {}
                Err(error) => decode_failed("delivery receipt", &location(m), &error),
            }
        })
        .map_err(failed("read the deliveries"))?;
    let mut letters: BTreeMap<(i32, i64), String> = BTreeMap::new();
    reader
        .read_all(&topics.dead_letters, |m| {
            let Some(payload) = m.payload() else { return };
            match schemas.decode::<DeadLetter>(payload, DeadLetter::SCHEMA, &location(m)) {
                Ok(letter) if letter.source_topic == topics.changes => {
                    let reason = match letter.status {
                        Some(status) => format!("{} {status}", letter.reason),
                        None => letter.reason,
                    };
                    letters.insert((letter.source_partition, letter.source_offset), reason);
                }
                Ok(_) => {}
                Err(error) => decode_failed("dead letter", &location(m), &error),
            }
        })
        .map_err(failed("read the dead letters"))?;

    for ((i, key, version), places) in changes {
        let s = &mut selected[i];
        if places.iter().any(|place| delivered.contains(place)) {
            s.delivered += 1;
            continue;
        }
        let reason = places
            .iter()
            .rev()
            .find_map(|place| letters.get(place))
            .cloned();
        let (partition, offset) = places[0];
        let change = ChangeRef {
            key,
            version,
            partition,
            offset,
            reason: reason.clone().unwrap_or_default(),
        };
        if reason.is_some() {
            s.dead_lettered.push(change);
        } else {
            s.pending.push(change);
        }
    }

    for (i, partitions) in passed_over::read(&reader, &topics.state, schemas, &index)? {
        selected[i].passed_over = partitions.into_values().collect();
    }

    let undecided = if options.count_undecided {
        Some(undecided(kafka, &reader, pipeline, &topics.snapshots)?)
    } else {
        None
    };
    Ok(Reconciliation {
        snapshots: selected,
        undecided,
    })
}

/// Records on `snapshots` past change-detector's committed offsets (from the start where it
/// has none).
fn undecided(
    kafka: &KafkaConfig,
    reader: &TopicReader,
    pipeline: &str,
    topic: &str,
) -> Result<u64, ReconcileError> {
    let group = format!("{pipeline}.change-detector");
    let partitions = reader.partitions(topic).map_err(failed("metadata"))?;
    let from = group_positions(kafka, "reconcile", &group, topic, partitions)
        .map_err(failed("committed offsets"))?;
    reader
        .read_from(topic, &from, |_| {})
        .map_err(failed("read past the detector's offsets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str) -> ChangeRef {
        ChangeRef {
            key: key.into(),
            version: 2,
            partition: 1,
            offset: 7,
            reason: "http_4xx 400".into(),
        }
    }

    #[test]
    fn reconciled_only_when_complete_decided_and_delivered() {
        let done = SnapshotReconciliation {
            status: Some(FileStatus::Completed),
            rows_sent: 10,
            created: 2,
            updated: 1,
            delivered: 3,
            ..SnapshotReconciliation::default()
        };
        assert_eq!(done.unchanged(), 7);
        let mut all = Reconciliation {
            snapshots: vec![done.clone()],
            undecided: Some(0),
        };
        assert!(all.is_reconciled());
        assert!(all.to_string().contains("RECONCILED: every row"));
        all.undecided = Some(4);
        assert!(!all.is_reconciled());
        all.undecided = None;
        assert!(all.is_reconciled(), "not counted");
        all.snapshots[0].dead_lettered.push(change("LAB-1"));
        assert!(!all.is_reconciled());
        let text = all.to_string();
        assert!(
            text.contains("LAB-1 v2 (changes[1]@7, http_4xx 400)"),
            "{text}"
        );
        assert!(text.contains("NOT RECONCILED"), "{text}");
        all.snapshots[0].dead_lettered.clear();
        all.snapshots[0].status = Some(FileStatus::InProgress);
        assert!(!all.is_reconciled());
    }
}
